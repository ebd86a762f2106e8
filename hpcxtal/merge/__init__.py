"""The merge stage: relax outputs into one ranked database (second de-duplication,
symmetry of relaxed structures, training overlap)."""
