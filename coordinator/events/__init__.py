"""The events table and its server-sent-events stream."""
