"""The citizen-facing side: channels, the message pipeline, the conversation log and handoff."""
