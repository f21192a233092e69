"""What is measured on a state or a volume: tortuosity, conductive networks, X-ray observation operators."""
