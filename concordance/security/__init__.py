"""Who may do what (access keys and grants), encryption at rest, and TLS."""
