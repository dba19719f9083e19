"""Low serum alkaline phosphatase CDS Hooks service."""
