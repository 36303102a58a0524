"""The templates boundary: from a touch and its recipient to the message's bytes, in the
client's language and the touch's design; previews and checks of the marketers' files."""
