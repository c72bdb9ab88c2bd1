"""Storage: what the workspace keeps and the models it calls.

Owns every Pixeltable table (`tables`), the content-addressed request store that alone sends requests to a model
(`store`), the model backends (`backends/`: the embedded llama.cpp model, Groq, OpenAI-compatible servers), the
project's one embedder (`embeddings`), the append-only audit log (`audit_log`), per-process reads (`reads`), crash
recovery (`recovery`), prices (`costs`) and the local model's label decoding (`calibration`).

May import: the base modules (`workspace.config`, `workspace.errors`, `workspace.display`) and `udfs`.
"""
