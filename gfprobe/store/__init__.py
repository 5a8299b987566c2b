"""The HDF5 run file: its schema, the one writer and the one reader."""
