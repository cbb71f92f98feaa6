"""The toolkit's parts that are not a command or the U-Net itself (see the README's layout)."""
