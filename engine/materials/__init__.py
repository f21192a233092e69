"""Parameter sets of materials: active-material transport and electrochemistry, elastic constants."""
