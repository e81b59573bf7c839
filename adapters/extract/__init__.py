"""The KnowledgeSDK extract-jobs provider: its adapter and its sandbox."""
