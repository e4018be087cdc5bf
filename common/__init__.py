"""What the stages share: the dataset and cache contracts, fingerprints, metrics and the command line."""

__version__ = "0.1.0"
