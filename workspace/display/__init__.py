"""Display: how values read, whatever layer shows them.

Owns the one number formatter (`formats`: p-values, percentages, points, milliseconds, tokens, money) and the
pure HTML of result objects (`results`). Data in, text or HTML out; imports nothing of the workspace but
`workspace.errors`, so every layer may use it.
"""
