"""Pictures and tables a person reads: QC montages and dataset summaries."""
