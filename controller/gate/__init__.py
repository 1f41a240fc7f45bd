"""The MoE² gate: a frozen prompt encoder and a small network giving one logit per expert,
trained once on the full expert set to minimise the cross-entropy of the mixture."""
