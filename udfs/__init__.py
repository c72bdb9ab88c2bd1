"""Pixeltable UDF modules of the prompt workspace.

Pixeltable stores a reference to a module-level UDF in each computed column, so these functions live in an
importable package rather than in a notebook. A changed scorer gets a new name (`exact_match_v2`) and a new
column, so that stored scores keep meaning what they meant when they were computed.
"""
