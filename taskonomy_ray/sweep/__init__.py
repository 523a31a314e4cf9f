"""The sweep layer: plan, ledger, scheduler (plain Python) and the Ray runner over them."""
