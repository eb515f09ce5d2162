"""Data: readers -> Subject records -> preprocessing -> slice cache -> splits -> datasets."""
