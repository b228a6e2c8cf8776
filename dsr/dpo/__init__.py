"""For the DPO: the register of requests and its statistics, read from the ledger."""
