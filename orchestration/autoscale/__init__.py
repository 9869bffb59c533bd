"""The autoscaler: sizes a pool from its queue (to zero and back), in-flight and deadline aware.

- `policy`: the pure decision, inputs → size (table-tested);
- `rate`: the measured per-node rate, from the runs' batch records;
- `deadline`: `--deadline` parsing (a time of day, an ISO time, or a duration);
- `loop`: the control loop (observe, decide, scale through the launcher interface, record);
- `state`: the autoscaler's last decision in the result store, for `orchestration status`.
"""
