"""Tool-calling data: the sample types, call parsing, the AST checker, scoring, deduplication,
dataset formats and the synthetic tool world."""
