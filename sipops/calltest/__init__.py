"""`sipops calltest`: softphones register and call through each host's roles with sipp as the SIP/RTP
engine and sipops' own scenarios (templates/sipp/), media counted both ways, DTMF, load mode."""
