"""Results of finished runs: collection, tables, statistics, plots and the report. Reads run
directories only; imports no torch."""
