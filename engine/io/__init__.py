"""Files: the HDF5 run file (writer/reader), restart slots, measured SOC maps."""
