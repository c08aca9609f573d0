"""Windows backend: ETW and Event Log sources, their decoding into the schema, and Windows inventory."""
