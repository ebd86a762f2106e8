"""Post-relax screening: what a campaign may call new, decided on relaxed structures."""
