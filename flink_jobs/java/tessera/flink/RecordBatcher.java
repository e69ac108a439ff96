package tessera.flink;

import java.util.ArrayList;
import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Collects raw record values into batches, so that the Python operator after it is called once per batch.
 *
 * <p>Each record becomes one string {@code <record timestamp>|<watermark>|v<value>} ({@code n} instead of
 * {@code v<value>} for a null value; an empty field for no timestamp / no watermark yet), where the watermark is
 * the last one this operator received before the record: chained to the Kafka source, that is the source's
 * per-partition watermark at the record, exactly what a per-record Python operator in its place would read.
 *
 * <p>A batch is emitted {@code intervalMs} after its first record (processing time), when it holds
 * {@code maxRecords}, before every checkpoint barrier (so a batch never spans a barrier and the operator has no
 * state), and at the end of input. Watermarks are forwarded unchanged.
 */
public class RecordBatcher extends AbstractStreamOperator<String[]>
        implements OneInputStreamOperator<String, String[]>, BoundedOneInput, ProcessingTimeCallback {

    private static final long serialVersionUID = 1L;

    private final long intervalMs;
    private final int maxRecords;

    private transient ArrayList<String> buffer;
    private transient long watermark;
    private transient boolean timerPending;
    private transient StreamRecord<String[]> reuse;

    public RecordBatcher(long intervalMs, int maxRecords) {
        this.intervalMs = Math.max(0, intervalMs);
        this.maxRecords = Math.max(1, maxRecords);
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffer = new ArrayList<>();
        watermark = Long.MIN_VALUE;
        timerPending = false;
        reuse = new StreamRecord<>(null);
    }

    @Override
    public void processElement(StreamRecord<String> element) throws Exception {
        String value = element.getValue();
        StringBuilder sb = new StringBuilder(value == null ? 24 : value.length() + 32);
        if (element.hasTimestamp()) {
            sb.append(element.getTimestamp());
        }
        sb.append('|');
        if (watermark != Long.MIN_VALUE) {
            sb.append(watermark);
        }
        sb.append('|');
        if (value == null) {
            sb.append('n');
        } else {
            sb.append('v').append(value);
        }
        buffer.add(sb.toString());
        if (buffer.size() >= maxRecords || intervalMs == 0) {
            emit();
        } else if (!timerPending) {
            timerPending = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + intervalMs, this);
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        watermark = Math.max(watermark, mark.getTimestamp());
        super.processWatermark(mark);
    }

    @Override
    public void onProcessingTime(long time) throws Exception {
        timerPending = false;
        emit();
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        emit();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void endInput() throws Exception {
        emit();
    }

    private void emit() {
        if (buffer.isEmpty()) {
            return;
        }
        output.collect(reuse.replace(buffer.toArray(new String[0])));
        buffer.clear();
    }
}
