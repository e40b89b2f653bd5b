"""What a job asks for and what it will need, known before any tensor exists (torch-free).

The request types and their parsing (`spec`, `sources`, `heal_config`, `limits`, `problems`), what each method,
export format and heal declares (`methods`, `exports`, `declarations`), and the plans made from them: the stages
a run reports (`stages`), its memory (`shape`, `memory`, `placement`, `heal_memory`, `sizes`) and its work
(`cost`); the zero-shot tasks a request may name and where a run reads them (`tasks`). The API, the router and the
worker use it without importing torch; the torch side imports it, never the reverse.
"""
