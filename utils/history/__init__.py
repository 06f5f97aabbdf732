"""The history engine: the record schema, the CSV and its index, the stores, the data folder's files."""
