"""UI: what people look at in a notebook or a browser.

Owns the comparison widget, the annotation widget, the HTML views of comparisons and the standalone report. They
take data from the layers below and render it; they never open a table or call a model themselves.

May import: `workspace.serving` and every layer below except `workspace.storage`; no Pixeltable.
"""
