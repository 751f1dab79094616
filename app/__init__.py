"""The Celery application of celery-bundle: pricing, quotes, notifications, reports."""
