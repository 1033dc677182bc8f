"""The bundled demo: a small trained draft/target pair for arithmetic word problems."""
