"""Reading prompts and pairs, the QA-Feedback loader, and writing pair datasets."""
