"""Language models: the engine interface, engines, and the text filters between the token
stream and speech."""
