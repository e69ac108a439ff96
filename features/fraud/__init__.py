"""The fraud feature repository: velocity features per card, customer, merchant, device and IP,
a merchant fraud rate on late labels, and the ``fraud_v1`` Join a fraud model reads.

Validate and inspect it with ``tessera validate features/fraud`` and ``tessera plan features/fraud``.
"""
