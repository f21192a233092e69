"""The resolved model: scenario -> geometry arrays + parameter pytrees (resolve), the particle model, the protocol as arrays."""
