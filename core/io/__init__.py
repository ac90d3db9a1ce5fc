"""Reading and writing what a user hands deltaprop: spec files, model files, data sets."""
