"""The foundation every other package stands on: the artifact store, the stage contract
(keys, manifests, refs), shared schemas, defaults and prompt ids. Imports nothing above it."""
