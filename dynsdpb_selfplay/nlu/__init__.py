"""Sequence classification (the NLU half of DynSDPB): data loading, metrics and the plain-vs-DynSDPB comparison."""
