"""neuralinst: the command line that joins the three layers (training, export, instrument)."""
