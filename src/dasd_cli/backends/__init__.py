"""Model access behind one interface (see base.py)."""
