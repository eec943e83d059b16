"""Output: the Parquet sink, the run manifest and the output folder, and the BigQuery sink."""
