"""The converter service: the tfquant pipeline as HTTP jobs (see `tfquant serve`)."""
