"""Celery workers that embed tiles with every encoder and upsert them into Qdrant."""
