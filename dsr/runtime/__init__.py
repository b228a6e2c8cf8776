"""The top of the core: the one bootstrap that wires settings, key ring, ledger, object storage and the Temporal
client, the local stack of ``dsr up``, the codec server and the dashboard queries."""
