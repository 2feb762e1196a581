"""Database: SQLAlchemy 2.x models and session handling."""
