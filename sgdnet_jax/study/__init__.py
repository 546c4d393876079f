"""Studies over many runs: the report of an ablation sweep (`report`: statistics and tables,
`plots`: pictures).

A sweep root holds one workdir per run, `R/<variant>/fold<k>[/seed<s>]`, each with the
`eval/<split>.json` and `eval/<split>_cases.csv` that `evaluate` writes. Nothing here imports JAX.
"""
