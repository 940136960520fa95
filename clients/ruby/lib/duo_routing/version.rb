# frozen_string_literal: true

module DuoRouting
  VERSION = "0.1.0"
end
