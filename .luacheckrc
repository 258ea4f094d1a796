std = "lua54"
max_line_length = false
files["tests/spec"] = { std = "+busted" }
files["scripts/**/spec"] = { std = "+busted" }
