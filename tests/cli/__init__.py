"""Tests of the command line (`functional_bp.cli`) and of the library it calls
(`functional_bp.runs`, `functional_bp.plots`)."""
