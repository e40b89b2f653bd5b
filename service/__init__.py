"""What the API and the workers share, torch-free: settings, the database, artifact stores, the broker
publisher, API keys and the job lifecycle (every write to a job's state)."""
