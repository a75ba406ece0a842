"""The LoopTool method: its events, run config, settings, the round ledger, curation (Eq. 5 and
the stop rule), label verification, expansion, training, evaluation and rewards."""
