"""What a deployment says about itself: the settings (environment, ``secrets.env``) and the controller profile
(``dsr.toml``). Read once by the runtime and handed to whoever needs it."""
