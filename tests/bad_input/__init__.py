"""The bad-input suite: for every surface, inputs a user may pass by mistake, each refused
before any computation with an exception whose message names the argument."""
